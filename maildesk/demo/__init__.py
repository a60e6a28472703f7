"""``maildesk demo``: a throwaway mail world on loopback and a tour of one ticket's life."""
