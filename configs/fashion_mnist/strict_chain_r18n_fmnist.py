# The strict (born-again) baseline chain: cross-entropy for every teacher.
_base_ = ['./tsd_chain_r18n_fmnist.py']

generations = dict(tolerant='none')
