"""kaon.security"""
