"""What people use: the command line, the MTA pipe and the views of tickets."""
