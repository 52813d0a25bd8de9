//! Background services.
