"""kaon.dashboard"""
