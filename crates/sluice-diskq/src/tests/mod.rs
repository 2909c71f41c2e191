//! Behavioural tests of the whole queue: each file covers one promise.

mod basic;
