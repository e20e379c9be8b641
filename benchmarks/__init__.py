"""`make bench`: each entry prints its figures as ratios against a baseline run in the same command."""
