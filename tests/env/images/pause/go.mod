module ferry.dev/tests/env/images/pause

go 1.22
