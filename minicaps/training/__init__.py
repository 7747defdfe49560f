"""Training: run.py's ``train`` takes a network's config and a TrainConfig (config.py) and
runs the epochs (epoch.py: the paper's loop, Adam from optim.py) on the data's splits
(splits.py), scores each epoch (evaluation.py), writes the run folder (saving.py,
runfolder.py) and goes on exactly from a checkpoint (resume.py). distributed.py shares a
run over MPI ranks; robustness.py scores networks under each transformation alone."""
