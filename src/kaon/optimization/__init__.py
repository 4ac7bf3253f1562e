"""kaon.optimization"""
