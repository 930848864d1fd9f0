//! ringstore-cache (in progress)
