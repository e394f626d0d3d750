"""One module per claim of the papers; each is run by `iclgd reproduce NAME`."""
