"""The data sets' loaders (pffbench/data.py is their API and command line):
files.py (checksums, mirrors, verified reads and downloads), idx.py (MNIST,
Fashion-MNIST), cifar.py, images.py (image folders), synthetic.py."""
