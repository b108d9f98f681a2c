"""Packaging for msds. Static on purpose: no hardware is probed at install time."""

from pathlib import Path

from setuptools import setup

setup(
    # "msds" and "kernels" are other projects' names on PyPI; the import name is msds.
    name="torch-msds",
    version="0.1.0",
    description="Fast, differentiable MSDS and DeepSSIM image-quality metrics for PyTorch",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    # kernels/ lives at the top of the tree but installs as msds.kernels.
    packages=["msds", "msds.metric", "msds.trunk", "msds.evaluation", "msds.cli", "msds.kernels"],
    package_dir={"msds": "msds", "msds.kernels": "kernels"},
    # The supported range, each end tested in CI (README, "Supported versions").
    install_requires=[
        "torch>=2.11,<2.15",
        "numpy",
        "scipy",
        "pillow",
        "tqdm",  # progress bars of msds eval and msds score
        'triton>=3.6,<3.10; platform_system == "Linux" and platform_machine == "x86_64"',
    ],
    # torchmetrics: msds.torchmetrics; matplotlib: the plots (msds eval --plot, demo --save, bench.plot).
    extras_require={
        "test": ["pytest", "pytest-benchmark", "matplotlib", "torchmetrics"],
        "torchmetrics": ["torchmetrics"],
        "plot": ["matplotlib"],
        # The peers beside msds in bench/peers.py. They pull torchvision, which must be built for the
        # installed torch: install with torch pinned to the installed version (README, "What it costs
        # against LPIPS and DISTS"), so pip keeps that torch; where PyPI has no matching torchvision
        # (the CPU build of torch 2.13), the peer rows skip with the reason.
        "bench": ["matplotlib", "lpips==0.1.4", "DISTS_pytorch==0.1"],
    },
    entry_points={"console_scripts": ["msds=msds.cli:main"]},
)
