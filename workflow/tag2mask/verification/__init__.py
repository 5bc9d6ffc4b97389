"""Stage `verification`: the classifier checks each pseudo mask and its confidence is rescored."""
