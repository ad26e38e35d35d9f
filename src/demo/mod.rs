//! Built-in offline scenarios for `openclaw demo`, with their mock services.

pub mod flight_booking;
pub mod mock_services;
