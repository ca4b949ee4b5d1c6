"""The command line: thin command groups that parse, call one service function, render."""
