"""Everything that talks to AWS: clients with pacing and retries, the calls we make, error codes."""
