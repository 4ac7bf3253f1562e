"""kaon.explanation"""
