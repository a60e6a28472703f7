"""What people use: the command line, the MTA pipe, stats and the HTML report."""
