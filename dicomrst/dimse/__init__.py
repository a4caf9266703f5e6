"""DIMSE (PS3.7) on the Upper Layer: messages, the services we use, the association pool.

* `commands`: command sets, encoded and parsed with struct; `status`: statuses as text.
* `connection`: `DimseConnection`, one association's messages: assembly from PDVs,
  requests and responses by Message ID, data sets to a consumer fragment by fragment.
* `client`: opening an association; `pool`: the associations to one PACS.
* `operation`: what every operation shares (its state machine, timer, C-CANCEL);
  `echo`, `find`, `get`, `move`, `store`: C-ECHO, C-FIND, C-GET, C-MOVE, C-STORE.
* `retrieval`: what C-GET and C-MOVE share (sub-operations into a sink, the result).
* `move_registry`: the C-MOVEs in flight and how an incoming C-STORE finds its own;
  `move_destination`: the listeners' STORE SCP; `server`: the listeners' factory;
  `contexts`: the storage presentation contexts we propose and accept.
* `errors`: `AssociationIntact`, an error that leaves the association reusable.
"""
