//! Interface setup over rtnetlink: link up, MTU, addresses, and routes through the TUN device.
//!
//! [`Netlink::configure`] applies an [`InterfaceSetup`] and returns what it added as an
//! [`Applied`]; [`Applied::remove`] takes exactly that away again on shutdown (routes first,
//! then addresses), so sluice never deletes routes or addresses somebody else made. Deleting
//! the device (closing its last TUN queue, or [`Netlink::delete_link`]) also makes the kernel
//! drop every address and route through it; [`Applied::remove`] treats "already gone" as done.
//!
//! A netlink socket belongs to the network namespace of the thread that opened it:
//! [`Netlink::connect`] where the device lives.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};

use futures_util::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::route::RouteScope;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

/// errno values that mean "what you want removed is not there (any more)".
const ENODEV: i32 = 19;
const ESRCH: i32 = 3;
const EADDRNOTAVAIL: i32 = 99;

/// Errors from interface setup; each names the object it was working on.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The netlink socket could not be opened.
    #[error("cannot open a netlink socket")]
    Connect {
        /// The socket error.
        source: io::Error,
    },
    /// No interface has this name.
    #[error("no network interface is named {name:?}")]
    LinkNotFound {
        /// The name looked for.
        name: String,
    },
    /// Looking an interface up failed.
    #[error("cannot look up network interface {name:?}")]
    LookupLink {
        /// The name looked for.
        name: String,
        /// The kernel's answer.
        source: rtnetlink::Error,
    },
    /// Bringing the link up failed.
    #[error("cannot set link {index} up")]
    SetUp {
        /// Interface index.
        index: u32,
        /// The kernel's answer.
        source: rtnetlink::Error,
    },
    /// Setting the MTU failed.
    #[error("cannot set the MTU of link {index} to {mtu}")]
    SetMtu {
        /// Interface index.
        index: u32,
        /// The MTU asked for.
        mtu: u32,
        /// The kernel's answer.
        source: rtnetlink::Error,
    },
    /// Adding an address failed.
    #[error("cannot add address {address} to link {index}")]
    AddAddress {
        /// Interface index.
        index: u32,
        /// The address and prefix length.
        address: IpNet,
        /// The kernel's answer.
        source: rtnetlink::Error,
    },
    /// Removing an address failed.
    #[error("cannot remove address {address} from link {index}")]
    RemoveAddress {
        /// Interface index.
        index: u32,
        /// The address and prefix length.
        address: IpNet,
        /// The kernel's answer.
        source: rtnetlink::Error,
    },
    /// Adding a route failed.
    #[error("cannot add a route to {cidr} via link {index}")]
    AddRoute {
        /// Interface index.
        index: u32,
        /// The destination.
        cidr: IpNet,
        /// The kernel's answer.
        source: rtnetlink::Error,
    },
    /// Removing a route failed.
    #[error("cannot remove the route to {cidr} via link {index}")]
    RemoveRoute {
        /// Interface index.
        index: u32,
        /// The destination.
        cidr: IpNet,
        /// The kernel's answer.
        source: rtnetlink::Error,
    },
    /// Deleting the interface failed.
    #[error("cannot delete link {index}")]
    DeleteLink {
        /// Interface index.
        index: u32,
        /// The kernel's answer.
        source: rtnetlink::Error,
    },
}

/// How the TUN interface is to be set up.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InterfaceSetup {
    /// MTU to set, if any (the TUN layer usually set it already).
    pub mtu: Option<u32>,
    /// Local addresses with their prefix length (`10.99.0.1/30`, `fd99::1/64`).
    pub addresses: Vec<IpNet>,
    /// Destinations to route into the device (host bits are ignored: `10.20.0.0/16`).
    pub routes: Vec<IpNet>,
}

/// What [`Netlink::configure`] added, so that shutdown removes exactly that.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "dropping it leaves the addresses and routes in place"]
pub struct Applied {
    /// Interface index.
    index: u32,
    /// Addresses added, in order.
    addresses: Vec<IpNet>,
    /// Routes added, in order.
    routes: Vec<IpNet>,
}

impl Applied {
    /// Interface index the setup applies to.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Routes added.
    pub fn routes(&self) -> &[IpNet] {
        &self.routes
    }

    /// Addresses added.
    pub fn addresses(&self) -> &[IpNet] {
        &self.addresses
    }

    /// Removes the routes, then the addresses. Anything already gone (the device was deleted)
    /// counts as removed. Every removal is tried; the first failure is returned.
    ///
    /// # Errors
    /// [`NetlinkError::RemoveRoute`] or [`NetlinkError::RemoveAddress`].
    pub async fn remove(self, netlink: &Netlink) -> Result<(), NetlinkError> {
        let mut first_error = None;
        for cidr in self.routes.iter().rev() {
            if let Err(e) = netlink.remove_route(self.index, *cidr).await {
                first_error.get_or_insert(e);
            }
        }
        for address in self.addresses.iter().rev() {
            if let Err(e) = netlink.remove_address(self.index, *address).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// A netlink connection (rtnetlink over tokio) in the current network namespace.
#[derive(Debug, Clone)]
pub struct Netlink {
    /// Request handle; the connection task it talks to lives on the runtime.
    handle: Handle,
}

/// Whether an rtnetlink error is one of `codes` (errno values).
fn is_errno(error: &rtnetlink::Error, codes: &[i32]) -> bool {
    match error {
        rtnetlink::Error::NetlinkError(message) => codes.contains(&message.raw_code().abs()),
        _ => false,
    }
}

impl Netlink {
    /// Opens a netlink socket in the calling thread's network namespace and spawns its
    /// connection task on the current tokio runtime.
    ///
    /// # Errors
    /// [`NetlinkError::Connect`].
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn connect() -> Result<Netlink, NetlinkError> {
        let (connection, handle, _messages) =
            rtnetlink::new_connection().map_err(|source| NetlinkError::Connect { source })?;
        tokio::spawn(connection);
        Ok(Netlink { handle })
    }

    /// The index of the interface called `name`.
    ///
    /// # Errors
    /// [`NetlinkError::LinkNotFound`] or [`NetlinkError::LookupLink`].
    pub async fn link_index(&self, name: &str) -> Result<u32, NetlinkError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        match links.try_next().await {
            Ok(Some(link)) => Ok(link.header.index),
            Ok(None) => Err(NetlinkError::LinkNotFound {
                name: name.to_owned(),
            }),
            Err(e) if is_errno(&e, &[ENODEV]) => Err(NetlinkError::LinkNotFound {
                name: name.to_owned(),
            }),
            Err(source) => Err(NetlinkError::LookupLink {
                name: name.to_owned(),
                source,
            }),
        }
    }

    /// Sets the link administratively up.
    ///
    /// # Errors
    /// [`NetlinkError::SetUp`].
    pub async fn set_up(&self, index: u32) -> Result<(), NetlinkError> {
        let message = LinkUnspec::new_with_index(index).up().build();
        self.handle
            .link()
            .set(message)
            .execute()
            .await
            .map_err(|source| NetlinkError::SetUp { index, source })
    }

    /// Sets the link MTU.
    ///
    /// # Errors
    /// [`NetlinkError::SetMtu`].
    pub async fn set_mtu(&self, index: u32, mtu: u32) -> Result<(), NetlinkError> {
        let message = LinkUnspec::new_with_index(index).mtu(mtu).build();
        self.handle
            .link()
            .set(message)
            .execute()
            .await
            .map_err(|source| NetlinkError::SetMtu { index, mtu, source })
    }

    /// Adds a local address (with its prefix length) to the link.
    ///
    /// # Errors
    /// [`NetlinkError::AddAddress`].
    pub async fn add_address(&self, index: u32, address: IpNet) -> Result<(), NetlinkError> {
        self.handle
            .address()
            .add(index, address.addr(), address.prefix_len())
            .execute()
            .await
            .map_err(|source| NetlinkError::AddAddress {
                index,
                address,
                source,
            })
    }

    /// Removes a local address from the link; an address (or link) already gone is fine.
    ///
    /// # Errors
    /// [`NetlinkError::RemoveAddress`].
    pub async fn remove_address(&self, index: u32, address: IpNet) -> Result<(), NetlinkError> {
        let error = |source| NetlinkError::RemoveAddress {
            index,
            address,
            source,
        };
        let gone = [ENODEV, EADDRNOTAVAIL];
        let mut found = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .set_address_filter(address.addr())
            .set_prefix_length_filter(address.prefix_len())
            .execute();
        let mut messages = Vec::new();
        loop {
            match found.try_next().await {
                Ok(Some(message)) => messages.push(message),
                Ok(None) => break,
                Err(e) if is_errno(&e, &gone) => break,
                Err(e) => return Err(error(e)),
            }
        }
        for message in messages {
            match self.handle.address().del(message).execute().await {
                Ok(()) => {}
                Err(e) if is_errno(&e, &gone) => {}
                Err(e) => return Err(error(e)),
            }
        }
        Ok(())
    }

    /// Routes `cidr` (host bits cleared) into the link, as `ip route add CIDR dev LINK` does.
    ///
    /// # Errors
    /// [`NetlinkError::AddRoute`].
    pub async fn add_route(&self, index: u32, cidr: IpNet) -> Result<(), NetlinkError> {
        self.handle
            .route()
            .add(route_message(index, cidr))
            .execute()
            .await
            .map_err(|source| NetlinkError::AddRoute {
                index,
                cidr,
                source,
            })
    }

    /// Removes the route to `cidr` through the link; a route (or link) already gone is fine.
    ///
    /// # Errors
    /// [`NetlinkError::RemoveRoute`].
    pub async fn remove_route(&self, index: u32, cidr: IpNet) -> Result<(), NetlinkError> {
        match self
            .handle
            .route()
            .del(route_message(index, cidr))
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if is_errno(&e, &[ESRCH, ENODEV]) => Ok(()),
            Err(source) => Err(NetlinkError::RemoveRoute {
                index,
                cidr,
                source,
            }),
        }
    }

    /// Deletes the interface (and with it its addresses and routes).
    ///
    /// # Errors
    /// [`NetlinkError::DeleteLink`].
    pub async fn delete_link(&self, index: u32) -> Result<(), NetlinkError> {
        self.handle
            .link()
            .del(index)
            .execute()
            .await
            .map_err(|source| NetlinkError::DeleteLink { index, source })
    }

    /// Applies `setup` to the link: MTU, addresses, up, then routes (a route through a link
    /// that is down is refused for IPv6). On failure, what was added so far is removed again.
    ///
    /// # Errors
    /// The first step that failed.
    pub async fn configure(
        &self,
        index: u32,
        setup: &InterfaceSetup,
    ) -> Result<Applied, NetlinkError> {
        let mut applied = Applied {
            index,
            addresses: Vec::new(),
            routes: Vec::new(),
        };
        let result = self.apply(setup, &mut applied).await;
        match result {
            Ok(()) => Ok(applied),
            Err(e) => {
                if let Err(cleanup) = applied.remove(self).await {
                    tracing::warn!(error = %cleanup, "cannot undo a partial interface setup");
                }
                Err(e)
            }
        }
    }

    async fn apply(
        &self,
        setup: &InterfaceSetup,
        applied: &mut Applied,
    ) -> Result<(), NetlinkError> {
        let index = applied.index;
        if let Some(mtu) = setup.mtu {
            self.set_mtu(index, mtu).await?;
        }
        for &address in &setup.addresses {
            self.add_address(index, address).await?;
            applied.addresses.push(address);
        }
        self.set_up(index).await?;
        for &cidr in &setup.routes {
            self.add_route(index, cidr).await?;
            applied.routes.push(cidr);
        }
        Ok(())
    }
}

/// A main-table route to `cidr` (host bits cleared) out of link `index` with no gateway.
fn route_message(index: u32, cidr: IpNet) -> rtnetlink::packet_route::route::RouteMessage {
    match cidr.trunc() {
        IpNet::V4(net) => RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(net.addr(), net.prefix_len())
            .output_interface(index)
            // What `ip route add ... dev X` uses for a route without a gateway.
            .scope(RouteScope::Link)
            .build(),
        IpNet::V6(net) => RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(net.addr(), net.prefix_len())
            .output_interface(index)
            .build(),
    }
}
