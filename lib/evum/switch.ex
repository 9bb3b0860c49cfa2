defmodule Evum.Switch do
  @moduledoc """
  An Ethernet switch for VMs, owned by an Elixir process: the Elixir face of
  the Erlang module `:evum_switch`.

  VMs join it with `Evm.create(switch: s)` (eth0 over UML's vector
  driver in bess mode, with a MAC derived from the VM's label, to which
  the VM's port is locked). Any process can join
  it too with `attach/1,2`; it then receives each frame for its port as

      {:evum_frame, switch, port, frame}

  and sends frames with `send/2,3`. Switching (MAC learning, flooding,
  bounded queues) runs on a native thread.
  """

  @typedoc "A switch: its pid or registered name."
  @type switch() :: pid() | atom()

  @doc "Starts a switch; the first one without a name is registered as `:evum_switch`."
  @spec start() :: {:ok, pid()} | {:error, term()}
  defdelegate start(), to: :evum_switch

  @doc """
  Options: `name: atom`, `:anonymous` (no registered name), `hub: true`
  (flood every frame to every port), `:gateway` or `gateway: settings` (evum's
  gateway as a port of the switch: DHCP, DNS, NAT through host sockets, port
  forwards; see `:evum_switch.start/1` for the settings), `cpu: cpu` (the
  host CPUs its thread may run on, as `Evm.create/1`'s `cpu`),
  `busy_poll: microseconds` (0-1000, default 32: the longest its thread
  polls for frames before it sleeps; it adapts to the traffic, and 0 never
  polls). Limits, each counted in `ports/1` or `counters/1` where it
  bites: `max_macs: n` (64 source MACs per port), `mac_table_size: n`
  (8192 in all), `storm_limit: n | :infinity` (10000 broadcast and
  multicast frames a second per port), `port_rate: n | :infinity` (frames
  a second per port; none by default), `port_security: bool` (true: a VM's
  port is locked to its MAC; with a gateway, ARP and DHCP are checked),
  `max_hold: ms` (50: how long a congested port's peer may take nothing
  before its senders are no longer held for it). An unknown option is
  `{:error, {:bad_option, option}}`.
  """
  @spec start(keyword()) :: {:ok, pid()} | {:error, term()}
  defdelegate start(options), to: :evum_switch

  @doc "Stops the switch; its sockets go with it."
  @spec stop(switch()) :: :ok
  defdelegate stop(switch), to: :evum_switch

  @doc "Makes the calling process a port of the switch."
  @spec attach(switch()) :: {:ok, non_neg_integer()} | {:error, term()}
  defdelegate attach(switch), to: :evum_switch

  @doc """
  Options: `mac: <<6 bytes>>` (the port's own address: frames for it come
  to this port alone from the start), `:promiscuous` (every frame on the
  switch).
  """
  @spec attach(switch(), list()) :: {:ok, non_neg_integer()} | {:error, term()}
  defdelegate attach(switch, options), to: :evum_switch

  @doc "Detaches one of the caller's ports."
  @spec detach(switch(), non_neg_integer()) :: :ok | {:error, term()}
  defdelegate detach(switch, port), to: :evum_switch

  @doc "Sends a frame into the switch from the caller's only port."
  @spec send(switch(), binary()) :: :ok | {:error, term()}
  defdelegate send(switch, frame), to: :evum_switch

  @doc "Sends a frame into the switch from one of the caller's ports."
  @spec send(switch(), non_neg_integer(), binary()) :: :ok | {:error, term()}
  defdelegate send(switch, port, frame), to: :evum_switch

  @doc "Every port with its counters (frames and bytes in and out, drops)."
  @spec ports(switch()) :: {:ok, [map()]} | {:error, term()}
  defdelegate ports(switch), to: :evum_switch

  @doc "The learned MAC addresses: `[%{mac: mac, port: port, age_ms: ms}]`."
  @spec mac_table(switch()) :: {:ok, [map()]} | {:error, term()}
  defdelegate mac_table(switch), to: :evum_switch

  @doc "Input the switch rejected, by reason."
  @spec counters(switch()) :: {:ok, map()} | {:error, term()}
  defdelegate counters(switch), to: :evum_switch

  @doc "The daemon transport's control socket."
  @spec control_socket(switch()) :: binary()
  defdelegate control_socket(switch), to: :evum_switch

  @doc "The bess transport's socket."
  @spec bess_socket(switch()) :: binary()
  defdelegate bess_socket(switch), to: :evum_switch

  @doc """
  The host group whose members may use the switch's sockets besides evum's
  own user (its VMs' host users join it), or `:undefined` when evum does not
  run as root.
  """
  @spec group(switch()) :: non_neg_integer() | :undefined
  defdelegate group(switch), to: :evum_switch

  @doc "Tells the switch that a VM is on it with a MAC, so `ports/1` names it (`Evm.create/1` does this)."
  @spec joined(switch(), pid(), binary()) :: :ok
  defdelegate joined(switch, vm, mac), to: :evum_switch

  @doc """
  Binds an IPv4 address to a MAC on the switch (`Evm.create/1` does this for
  the address it gives a VM on a named network): ARP claiming the address
  from another MAC is dropped and counted (`drops_guard` in `ports/1`).
  """
  @spec bind(switch(), tuple() | String.t() | charlist(), binary()) :: :ok | {:error, term()}
  defdelegate bind(switch, address, mac), to: :evum_switch

  @doc """
  Splits the switch: each group (VMs by pid or label, or port ids) talks
  inside, not across; the ports no group names are one more group. In force
  for every frame after it returns; what it keeps from a port is counted in
  the sender's `drops_nemesis`.
  """
  @spec partition(switch(), [[Evm.vm() | non_neg_integer()]]) :: :ok | {:error, term()}
  defdelegate partition(switch, groups), to: :evum_switch

  @doc "Ends the partition (cuts stay)."
  @spec heal(switch()) :: :ok | {:error, term()}
  defdelegate heal(switch), to: :evum_switch

  @doc "The partition's groups and the cuts, by port id: `{:ok, %{groups: groups, cuts: cuts}}`."
  @spec partitions(switch()) :: {:ok, map()} | {:error, term()}
  defdelegate partitions(switch), to: :evum_switch

  @doc "Drops every frame from `from` to `to` (VMs or ports), the other way not."
  @spec cut(switch(), Evm.vm() | non_neg_integer(), Evm.vm() | non_neg_integer()) ::
          :ok | {:error, term()}
  defdelegate cut(switch, from, to), to: :evum_switch

  @doc "Ends a `cut/3`."
  @spec restore(switch(), Evm.vm() | non_neg_integer(), Evm.vm() | non_neg_integer()) ::
          :ok | {:error, term()}
  defdelegate restore(switch, from, to), to: :evum_switch

  @doc """
  Captures the frames forwarded from and to `target` (a VM, a port id, or
  `:all`) into a new pcap file with nanosecond timestamps: `{:ok, capture}`.
  """
  @spec capture(switch(), Evm.vm() | non_neg_integer() | :all, Path.t()) ::
          {:ok, pos_integer()} | {:error, term()}
  defdelegate capture(switch, target, file), to: :evum_switch

  @doc "As `capture/3`, with `max_bytes: n` (1 GiB by default)."
  @spec capture(switch(), Evm.vm() | non_neg_integer() | :all, Path.t(), keyword()) ::
          {:ok, pos_integer()} | {:error, term()}
  defdelegate capture(switch, target, file, options), to: :evum_switch

  @doc """
  Impairs the frames to `target` (a VM or port id), or from one to another
  (`{from, to}`), as netem does: `loss`, `loss_burst: {p, mean_len}`,
  `delay` and `jitter` (ms), `duplicate`, `reorder`, `corrupt`
  (probabilities), `rate` (bits a second). See `:evum_switch.impair/3`.
  """
  @spec impair(switch(), term(), map()) :: :ok | {:error, term()}
  defdelegate impair(switch, target, settings), to: :evum_switch

  @doc "Makes a link clean again at once."
  @spec clear(switch(), term()) :: :ok | {:error, term()}
  defdelegate clear(switch, target), to: :evum_switch

  @doc """
  Tells the caller of the switch's events as `{:evum_switch, switch, event}`:
  ports up and down, MAC moves, partitions, cuts, impairments (see
  `:evum_switch.subscribe/1` for their shapes).
  """
  @spec subscribe(switch()) :: :ok | {:error, term()}
  defdelegate subscribe(switch), to: :evum_switch

  @doc "Stops `subscribe/1`'s messages."
  @spec unsubscribe(switch()) :: :ok | {:error, term()}
  defdelegate unsubscribe(switch), to: :evum_switch

  @doc "Every impaired link with what it did."
  @spec impairments(switch()) :: {:ok, [map()]} | {:error, term()}
  defdelegate impairments(switch), to: :evum_switch

  @doc "Ends a capture: `{:ok, %{frames: n, bytes: n, missed: n}}`."
  @spec stop_capture(switch(), pos_integer()) :: {:ok, map()} | {:error, term()}
  defdelegate stop_capture(switch, capture), to: :evum_switch

  @doc "The boot option that puts a VM's vec0 on this switch over bess, with the given MAC."
  @spec bess_option(switch(), binary()) :: tuple()
  defdelegate bess_option(switch, mac), to: :evum_switch

  @doc "The boot option that puts a VM's eth0 on this switch with the given MAC."
  @spec eth_option(switch(), binary()) :: tuple()
  defdelegate eth_option(switch, mac), to: :evum_switch

  @doc """
  Forwards `{proto, host_address, host_port, guest_address, guest_port}`
  through the switch's gateway; the forward goes when `for` (a pid, or
  `:undefined`) ends. `{:ok, bound_port}`.
  """
  @spec forward(switch(), tuple(), pid() | :undefined) ::
          {:ok, :inet.port_number()} | {:error, term()}
  defdelegate forward(switch, forward, for), to: :evum_switch

  @doc "Removes the forward of `{proto, host_address, host_port}`."
  @spec unforward(switch(), tuple()) :: :ok | {:error, term()}
  defdelegate unforward(switch, which), to: :evum_switch

  @doc "The gateway's forwards, with connections and bytes each way."
  @spec forwards(switch()) :: {:ok, [map()]} | {:error, term()}
  defdelegate forwards(switch), to: :evum_switch

  @doc "The gateway's counters: frames, flows, drops by reason, and every NAT flow."
  @spec gateway_counters(switch()) :: {:ok, map()} | {:error, term()}
  defdelegate gateway_counters(switch), to: :evum_switch
end
