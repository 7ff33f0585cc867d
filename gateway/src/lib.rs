//! Wicket
