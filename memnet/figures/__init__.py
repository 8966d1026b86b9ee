"""The chapter's pictures, drawn by the real models (``memnet figures`` draws them all).

    composition.py   repeated composition of a recurrent transition (vanishing and exploding derivatives)
    echo_state.py    the echo-state property: distance of two runs of one reservoir, eigenvalues of W
    graph.py         the unrolled computational graph of a step, traced with torch.fx, drawn with matplotlib
    attention.py     MemN2N attention over a bAbI story, hop by hop
    access.py        NTM and DNC memory access on one example (with ``memnet.plots``)
    training.py      the short training loops the command uses when it is given no checkpoint
    style.py         the Agg backend and one way to save a PNG

The functions take networks and tensors, never files of the command floor; the command
(``memnet.cli.figures``) reads checkpoints, builds tasks and trains what is missing.
"""
