/* One selection shared by the views of a page group (the attention explorer, the head maps,
 * the cluster scatter). A click in one view shows in all at once, in the page, then Python hears
 * of it and sends the selection back to every view: `echo` tells a view that such a selection
 * was already shown (published here in the last few seconds), so a late echo never moves a view
 * back from where the user has gone since.
 *
 * Loaded before attention_explorer.js and views.js (ui/explorer.py and ui/views.py put it in
 * front of each: whichever comes first defines window.DashboardBus, the other finds it).
 */
(function (global) {
  "use strict";
  if (global.DashboardBus) return;
  global.DashboardBus = (function () {
    var subs = {}, recent = {}, ECHO_MS = 4000;
    return {
      publish: function (group, layer, head, owner) {
        var now = Date.now();
        recent[group] = (recent[group] || []).filter(function (r) { return now - r.t < ECHO_MS; });
        recent[group].push({layer: layer, head: head, t: now, seen: []});
        (subs[group] || []).slice().forEach(function (s) { if (s.owner !== owner) s.fn(layer, head); });
      },
      subscribe: function (group, owner, fn) {
        var list = subs[group] = (subs[group] || []).filter(function (s) { return s.owner !== owner; });
        list.push({owner: owner, fn: fn});
      },
      echo: function (group, owner, layer, head) {
        var now = Date.now(), list = recent[group] || [];
        for (var i = 0; i < list.length; i++) {
          var r = list[i];
          if (now - r.t < ECHO_MS && r.layer === layer && r.head === head && r.seen.indexOf(owner) < 0) {
            r.seen.push(owner);
            return true;
          }
        }
        return false;
      }
    };
  })();
})(typeof window !== "undefined" ? window : this);
