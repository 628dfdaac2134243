"""Face swap family: inswapper-layout and HyperSwap swappers, face restoration, tracking, nodes."""
