"""Result protos: `results.proto` and its generated code `results_pb2`.

Regenerate `results_pb2.py` with tools/gen_protos.sh after editing results.proto. Build and write
messages through `ckpt_rank.results`; import them with `from ckpt_rank.protos import results_pb2`.
"""
