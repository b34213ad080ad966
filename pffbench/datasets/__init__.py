"""The data sets' loaders: load.py (load_dataset by name; pffbench/data.py re-exports it beside the command
line), files.py (checksums, mirrors, verified reads and downloads), idx.py (MNIST,
Fashion-MNIST), cifar.py, images.py (image folders), synthetic.py."""
