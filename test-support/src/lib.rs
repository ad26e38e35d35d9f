//! Test-only helpers shared by the workspace's tests: a throwaway CA and local
//! HTTPS upstream servers that count their connections.
