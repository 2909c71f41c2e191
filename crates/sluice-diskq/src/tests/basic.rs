//! Appending, reading, acknowledging, closing and reopening.
