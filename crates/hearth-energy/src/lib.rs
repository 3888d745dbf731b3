//! hearth-energy (work in progress).
