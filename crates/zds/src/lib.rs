//! ZDS.
