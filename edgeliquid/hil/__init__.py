"""Hardware in the loop: the simulated robot (cart-pole speaking protocol v1) and the demo rig.

May import everything below it (model, runtime, node, observe); never the cli.
"""
