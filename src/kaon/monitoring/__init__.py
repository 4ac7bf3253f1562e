"""kaon.monitoring"""
