"""ckpt_rank: rank pre-trained checkpoints for transfer without fine-tuning them all."""

import pathlib

import setuptools

_HERE = pathlib.Path(__file__).parent


def _requirements(name):
  lines = (_HERE / name).read_text().splitlines()
  return [l.split('#')[0].strip() for l in lines
          if l.split('#')[0].strip() and not l.startswith('-r')]


setuptools.setup(
    name='ckpt_rank',
    version='0.1.0',
    description='Ranking neural checkpoints for transfer learning (NeuCRaB, NLEEP) in JAX.',
    long_description=(_HERE / 'README.md').read_text(),
    long_description_content_type='text/markdown',
    packages=setuptools.find_packages(include=['ckpt_rank', 'ckpt_rank.*']),
    python_requires='>=3.11',
    install_requires=_requirements('requirements.txt'),
    extras_require={'test': _requirements('requirements-test.txt')},
    license='Apache-2.0',
)
