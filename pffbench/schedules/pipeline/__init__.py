"""The activation pipeline: schedule.py (the loop), stage.py (a rank's block of
layers, rank 0's minibatches), communications.py (the links between ranks)."""
