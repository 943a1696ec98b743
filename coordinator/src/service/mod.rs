//! gRPC services: [`federation`] for bank workers, [`admin`] for the data-science team.

pub mod admin;
pub mod federation;
