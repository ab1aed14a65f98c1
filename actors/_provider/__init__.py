"""The provider actor: one external service behind a supervised actor with all its policies.

* ``_actor``: :class:`~actors.ProviderActor`'s shell (construction, lifecycle, status) and the
  theory of operation;
* ``_jobs``: admission, workers, retries, hedging and fallback;
* ``_reporting``: reports to the monitor and the housekeeping timer;
* ``_base``: the actor's fields and the small records its parts share;
* ``_messages``: :class:`~actors.Isolate`, :class:`~actors.Reset`, :class:`~actors.GetStatus`
  and :class:`~actors.ProviderStatus` (:class:`~actors.Call` is shared, in ``actors._protocol``);
* ``_client``: the :class:`~actors.Provider` client.

It reports to a monitor given as a ref or a path: it does not import the monitor.
"""
