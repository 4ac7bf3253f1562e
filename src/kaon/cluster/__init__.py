"""kaon.cluster"""
