"""HTTP resources of the stand-in: each translates one request into one call on the domain object."""
