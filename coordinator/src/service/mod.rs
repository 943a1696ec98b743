//! gRPC services: [`federation`] for bank workers, [`admin`] for the data-science team, and
//! [`auth`], who the caller is.

pub mod admin;
pub mod auth;
pub mod federation;
