"""nodepool: a Nodepool launcher for OpenStack clouds."""
