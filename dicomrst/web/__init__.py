"""The HTTP side: the Klein resource tree, the site, and the listening service."""
