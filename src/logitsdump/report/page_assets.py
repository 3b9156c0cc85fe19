"""The report page's fixed parts: its style sheet and its two scripts (error recorder, table sorting and filters).

The verdict colours come from the verdict table (`compare/verdicts.py`). The scripts
mark the page for a reader's browser only: `<html data-errors>` collects script errors,
`<body data-ready="1">` says the table script ran.
"""

from __future__ import annotations

from logitsdump.compare import verdicts

CSS = """
:root{--fg:#1d2330;--muted:#667085;--line:#e3e6ec;--bg:#fff;--soft:#f6f7f9;--g:#1f5fbf;--m:#b5531b;
}
*{box-sizing:border-box}
section.case{content-visibility:auto;contain-intrinsic-size:auto 1600px}
body{margin:0 auto;max-width:1180px;padding:0 28px 40px;font:14px/1.45 system-ui,-apple-system,"Segoe UI",
Roboto,"Noto Sans","DejaVu Sans",sans-serif;color:var(--fg);background:var(--bg)}
h1{font-size:26px;margin:26px 0 4px}h2{font-size:20px;margin:34px 0 12px;padding-bottom:6px;
border-bottom:2px solid var(--line)}h3{font-size:17px;margin:0 0 6px}h4{font-size:14px;margin:18px 0 6px;
text-transform:uppercase;letter-spacing:.04em;color:#3b4556}h5{font-size:13px;margin:0 0 6px}
code,pre,.tok{font-family:ui-monospace,"SFMono-Regular",Menlo,Consolas,"DejaVu Sans Mono",monospace}
code{font-size:12.5px;background:var(--soft);padding:1px 4px;border-radius:4px;word-break:break-all}
a{color:#1f5fbf;text-decoration:none}a:hover{text-decoration:underline}
.muted{color:var(--muted)}.small{font-size:12px}.sub{margin:0 0 10px;color:var(--muted)}
.top nav{display:flex;gap:18px;margin:12px 0 0}.top nav a{font-weight:600}
dl.paths{display:grid;grid-template-columns:max-content 1fr;gap:4px 10px;margin:8px 0}
dl.paths dt,dl.paths dd{margin:0}
.dev{display:inline-block;font-size:11px;font-weight:700;text-transform:uppercase;color:#fff;border-radius:4px;
padding:1px 6px}.dev.g{background:var(--g)}.dev.m{background:var(--m)}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(150px,1fr));gap:12px}
.card{border:1px solid var(--line);border-top:4px solid var(--vc,#999);border-radius:8px;padding:10px 12px;
background:#fff}.card .count{font-size:28px;font-weight:700;color:var(--vc)}.card .name{font-weight:700}
.card p{margin:6px 0 0;font-size:12px;color:#475467}.card.zero{opacity:.55}.card.zero .count{color:var(--muted)}
.replay-note{margin:12px 0 0;padding:8px 12px;background:#f2f8f9;border-left:4px solid var(--v-noise);
border-radius:4px;font-size:13px}
.pill{display:inline-block;padding:1px 8px;border-radius:999px;font-size:12px;font-weight:700;color:#fff;
background:var(--vc,#888);white-space:nowrap;vertical-align:1px}
table.grid{border-collapse:collapse;width:100%;font-size:13px}
table.grid th,table.grid td{border-bottom:1px solid var(--line);padding:5px 8px;text-align:left;vertical-align:top}
table.grid thead th{background:var(--soft);font-weight:600;white-space:nowrap}
.num{text-align:right!important;font-variant-numeric:tabular-nums}td.zero{color:#b0b7c3}
.scroll{overflow-x:auto}
.filters{display:flex;flex-wrap:wrap;gap:8px;align-items:center;margin-bottom:10px}
.filter{font:inherit;font-size:13px;border:1px solid var(--line);background:#fff;border-radius:999px;
padding:3px 12px;cursor:pointer;color:var(--muted)}
.filter.on{border-color:var(--vc,#667085);color:var(--fg);box-shadow:inset 0 -2px 0 var(--vc,#667085)}
.filter b{margin-left:4px}.shown{margin-left:auto;font-size:12px}
table.sortable thead th{cursor:pointer;user-select:none}
table.sortable thead th::after{content:" ↕";color:#c0c6d0;font-size:11px}
table.sortable thead th[aria-sort=ascending]::after{content:" ▲";color:var(--fg)}
table.sortable thead th[aria-sort=descending]::after{content:" ▼";color:var(--fg)}
td.reason{color:#475467;font-size:12px;min-width:180px}table.sortable td:nth-child(-n+2){overflow-wrap:anywhere}
table.sortable thead th{white-space:normal;vertical-align:bottom}
table.thresholds th,table.thresholds td.num{white-space:nowrap}
table.thresholds td.muted{overflow-wrap:anywhere}
table.thresholds tr.group th{background:var(--soft);font-size:12px;white-space:normal;color:#3b4556}
table.stats-kld,table.stats-dp,table.stats-top{font-size:12px}
table.stats-kld td,table.stats-dp td,table.stats-top td{white-space:nowrap;padding:4px 6px}
table.stats-kld th,table.stats-dp th,table.stats-top th{padding:4px 6px}
table.stats-kld td.se,table.stats-dp td.se,table.stats-top td.se{white-space:normal}
.case{border:1px solid var(--line);border-left:5px solid var(--vc,#999);border-radius:8px;padding:14px 18px;
margin:0 0 22px;background:#fff}
.case .task{font-size:12px;font-weight:400;color:var(--muted);margin-left:6px}
.explain{margin:2px 0 6px;color:#475467}.reason code{background:#fff4f2}
.case.v-tie-flip .reason code{background:#fff8e6}
.facts{display:flex;flex-wrap:wrap;gap:8px 26px;margin:6px 0 0}.facts dt{font-size:11px;color:var(--muted);
text-transform:uppercase;letter-spacing:.04em}.facts dd{margin:0;font-weight:600;font-variant-numeric:tabular-nums}
pre.query{background:var(--soft);border:1px solid var(--line);border-radius:6px;padding:8px 10px;margin:0;
white-space:pre-wrap;word-break:break-word;max-height:180px;overflow:auto;font-size:12.5px}
.align{display:flex;flex-wrap:wrap;gap:6px 2px;align-items:stretch}
.align .col{display:flex;flex-direction:column;align-items:stretch;text-align:center;min-width:26px;
border-radius:5px;padding:2px}
.align .col.head{text-align:right;margin-right:6px}
.align .col.head .tok{border:none;background:none;font-family:inherit;font-size:11px;font-weight:700;
text-transform:uppercase;padding:3px 2px}.align .col.head .tok.g{color:var(--g)}.align .col.head .tok.m{color:var(--m)}
.align .i{font-size:10px;color:#98a2b3;line-height:14px}.align .dumped .i{color:var(--fg);font-weight:700}
.align .tok{display:block;border:1px solid var(--line);border-radius:4px;margin:1px 0;padding:2px 5px;
font-size:13px;background:#fff;white-space:pre;min-height:24px}
.align .col.after .tok{color:#98a2b3;border-style:dashed}
.align .col.first-diff{background:#fde2e1;outline:2px solid var(--v-divergent)}
.align .col.first-diff .tok{border-color:var(--v-divergent);font-weight:700}
.case.v-tie-flip .align .col.first-diff{background:#fdf1d6;outline-color:var(--v-tie-flip)}
.case.v-tie-flip .align .col.first-diff .tok{border-color:var(--v-tie-flip)}
.align .col.changed{background:#e0f2f1;outline:2px solid var(--v-noise)}
.align .col.changed .tok{border-color:var(--v-noise);font-weight:700}
.case.v-precision-suspect .align .col.changed{background:#fce4ec;outline-color:var(--v-precision-suspect)}
.case.v-precision-suspect .align .col.changed .tok{border-color:var(--v-precision-suspect)}
table.changes tr.clear td{background:#fce4ec}table.changes thead th{white-space:normal;vertical-align:bottom}
.tok.id{color:#475467}.tok .tid{font-size:10px;color:var(--muted)}.tok.none{color:#c0c6d0;border-style:dotted!important}
.plots{display:grid;grid-template-columns:repeat(3,minmax(0,1fr));gap:12px}
.plots figure{margin:0;border:1px solid var(--line);border-radius:6px;
padding:6px 8px 2px;background:#fff}.plots figcaption{font-size:12px;margin-bottom:2px}
svg.plot{display:block;width:100%;height:auto}svg.plot .frame{fill:#fcfcfd;stroke:#d0d5dd}svg.plot .grid{stroke:#eef0f3}
svg.plot .tick{font-size:10px;fill:#667085;font-family:system-ui,sans-serif}
svg.plot .axis{font-size:10px;fill:#98a2b3;font-family:system-ui,sans-serif}
svg.plot .series{fill:none;stroke:#1f5fbf;stroke-width:1.8;stroke-linejoin:round}
svg.plot .dot{fill:#1f5fbf}svg.plot .dot.mark{fill:var(--v-divergent)}
svg.plot .threshold{stroke:#667085;stroke-dasharray:5 4;stroke-width:1.2}
svg.plot .marker{stroke:var(--v-divergent);stroke-width:1.6;stroke-dasharray:3 2}
svg.plot .marker.minor{stroke:#e07b7b;stroke-width:1;stroke-dasharray:2 3}
svg.plot .bar{fill:#7ea6e0}svg.plot .zero{stroke:#98a2b3;stroke-width:1}
svg.plot .mean{stroke:var(--v-divergent);stroke-width:1.6;stroke-dasharray:3 2}
svg.plot .unjudged{fill:#eef0f3;opacity:.7}svg.plot .empty{font-size:12px;fill:#98a2b3}
.legend .key{display:inline-block;width:18px;height:0;vertical-align:middle;margin:0 4px 0 12px}
.legend .key.marker{border-top:2px dashed var(--v-divergent)}
.legend .key.marker.minor{border-top:1px dashed #e07b7b}.legend .key.threshold{border-top:2px dashed #667085}
.legend .key.shade{height:10px;background:#e3e6ec}
.topk{display:grid;grid-template-columns:1fr 1fr;gap:20px}
.topk h5.g{color:var(--g)}.topk h5.m{color:var(--m)}
table.cand .tok{display:inline-block;border:1px solid var(--line);border-radius:4px;padding:0 5px;
white-space:pre;background:#fff}
table.cand tr.chosen td{background:#f4f7fd}
.pickg,.pickm{display:inline-block;font-size:10px;font-weight:700;color:#fff;border-radius:3px;padding:0 4px;
margin-left:5px;vertical-align:1px}.pickg{background:var(--g)}.pickm{background:var(--m)}
td.prob{position:relative;min-width:110px}td.prob .bar{position:absolute;left:0;top:3px;bottom:3px;
background:#dbe7fb;border-radius:2px}td.prob .pv{position:relative}
details.steps{margin-top:14px}details.steps summary{cursor:pointer;color:#475467;font-weight:600}
tr.fail td:nth-child(9){color:var(--v-divergent);font-weight:600}tr.pass td:nth-child(9){color:var(--v-identical)}
.top-link{text-align:right;margin:6px 0 0;font-size:12px}
footer{margin-top:30px;color:var(--muted);font-size:12px;border-top:1px solid var(--line);padding-top:10px}
@media (max-width:900px){.cards{grid-template-columns:repeat(2,1fr)}.topk,.plots{grid-template-columns:1fr}}
"""

#: One colour per verdict (`--v-<verdict>`) and the class that selects it (`.v-<verdict>`), from the verdict table.
VERDICT_CSS = (
    ":root{" + ";".join(f"--v-{verdicts.slug(v.name)}:{v.colour}" for v in verdicts.TABLE) + "}\n"
    + "".join(f".v-{verdicts.slug(v.name)}{{--vc:var(--v-{verdicts.slug(v.name)})}}" for v in verdicts.TABLE) + "\n"
)

ERROR_JS = """
(function(){var root=document.documentElement;
function note(text){var prev=root.getAttribute('data-errors');
  root.setAttribute('data-errors',prev?prev+' | '+text:text);}
window.addEventListener('error',function(e){note('error: '+e.message+' (line '+e.lineno+')');});
window.addEventListener('unhandledrejection',function(e){note('rejection: '+e.reason);});})();
"""

MAIN_JS = """
(function(){
'use strict';
var table=document.getElementById('case-table');
var body=table.tBodies[0];
var heads=Array.prototype.slice.call(table.tHead.rows[0].cells);
var rows=Array.prototype.slice.call(body.querySelectorAll('tr[data-verdict]'));
function key(row,col,type){var v=row.cells[col].getAttribute('data-v');
  if(v===null||v===''){return null;} return type==='text'?v:parseFloat(v);}
function sortBy(col,dir){var type=heads[col].getAttribute('data-type');
  rows.sort(function(a,b){var x=key(a,col,type),y=key(b,col,type);
    if(x===null||y===null){if(x===y){return a.dataset.index-b.dataset.index;}return x===null?1:-1;}
    var c=type==='text'?x.localeCompare(y):x-y;
    return c!==0?c*dir:a.dataset.index-b.dataset.index;});
  rows.forEach(function(r){body.appendChild(r);});
  heads.forEach(function(h){h.removeAttribute('aria-sort');});
  heads[col].setAttribute('aria-sort',dir>0?'ascending':'descending');apply();}
heads.forEach(function(h,col){
  function go(){sortBy(col,h.getAttribute('aria-sort')==='ascending'?-1:1);}
  h.addEventListener('click',go);
  h.addEventListener('keydown',function(e){if(e.key==='Enter'||e.key===' '){e.preventDefault();go();}});});
var buttons=Array.prototype.slice.call(document.querySelectorAll('button.filter'));
var shown=document.getElementById('shown');
var page=parseInt(table.dataset.page||'0',10)||rows.length;var limit=page;
var more=document.getElementById('more');
function apply(){var on={};buttons.forEach(function(b){if(b.dataset.verdict!=='*'){
    on[b.dataset.verdict]=b.classList.contains('on');b.setAttribute('aria-pressed',String(on[b.dataset.verdict]));}});
  var n=0,listed=0;rows.forEach(function(r){var vis=on[r.dataset.verdict]!==false;if(vis){n++;}
    var show=vis&&listed<limit;if(show){listed++;}if(r.hidden===show){r.hidden=!show;}});
  var all=buttons.filter(function(b){return b.dataset.verdict!=='*';})
    .every(function(b){return b.classList.contains('on');});
  buttons[0].classList.toggle('on',all);
  if(more){more.hidden=listed>=n;}
  shown.textContent='showing '+listed+' of '+rows.length+(listed<n?' ('+n+' match: show more below)':'');return listed;}
if(more){more.addEventListener('click',function(e){var what=e.target.dataset.more;if(!what){return;}
  limit=what==='all'?rows.length:limit+page;apply();});}
function toggle(b){if(b.dataset.verdict==='*'){var turnOn=!b.classList.contains('on');
    buttons.forEach(function(x){x.classList.toggle('on',turnOn);});}
  else{b.classList.toggle('on');}return apply();}
buttons.forEach(function(b){b.addEventListener('click',function(){toggle(b);});});
apply();
document.body.dataset.ready='1';
})();
"""
