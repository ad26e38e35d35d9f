//! Host-side isolation: the session network namespace, tap devices and the
//! `netns` process sandbox.
