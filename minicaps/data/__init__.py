"""The data: every data set behind one registry (registry.py: ``load_dataset(name)``), each
a Dataset of uint8 images and labels (dataset.py). A module per data set reads and
verifies its files (mnist, cifar10, svhn, smallnorb; multimnist and affnist are made from
MNIST's digits); folder.py reads a folder of your own pictures, pictures.py one picture;
augment.py holds the shifts, crops and flips training draws; download.py the verified
downloads every set shares."""
