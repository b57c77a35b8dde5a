# Strict (born-again) chain in the memorising regime: cross-entropy for every
# teacher; otherwise identical to tsd_chain_cnn_fm500.py.
_base_ = ['./tsd_chain_cnn_fm500.py']

generations = dict(tolerant='none')
