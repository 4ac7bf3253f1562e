"""kaon.robustness"""
