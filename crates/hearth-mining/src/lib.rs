//! hearth-mining (work in progress).
