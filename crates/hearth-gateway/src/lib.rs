//! hearth-gateway (work in progress).
