//! hearth-sim (work in progress).
