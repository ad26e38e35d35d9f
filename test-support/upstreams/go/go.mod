module openclaw.invalid/upstream

go 1.19
